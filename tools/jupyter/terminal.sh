#!/bin/sh
# The shell of a JupyterLab terminal that `make lab` opens: the user's own shell, interactive, with the course's
# environment ($COURSE_VENV, set by the Makefile) activated AFTER the shell's start-up files, which may put another
# python first on PATH (pyenv, conda init). bash and zsh read theirs and then .venv/bin/activate; another shell
# starts with .venv/bin first on PATH.
here="$(cd "$(dirname "$0")" && pwd)"
shell="${SHELL:-/bin/sh}"
case "$(basename "$shell")" in
  bash) exec "$shell" --rcfile "$here/bashrc" -i ;;
  zsh) COURSE_ZDOTDIR="${ZDOTDIR:-$HOME}" ZDOTDIR="$here/zsh" exec "$shell" -i ;;
  *) PATH="$COURSE_VENV/bin:$PATH" VIRTUAL_ENV="$COURSE_VENV" exec "$shell" -i ;;
esac
