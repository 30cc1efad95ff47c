"""The ground floor every area stands on: RMSNorm and SwiGLU (``layers``), the device, seed and thread helpers
(``runtime``) and the argument checks of the course's boundaries (``validation``). Imports nothing else of the
package.
"""
