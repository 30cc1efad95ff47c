# zsh start-up files of the lab's terminals (tools/jupyter/terminal.sh): the user's own, then the course's environment.
ZDOTDIR="$COURSE_ZDOTDIR"
if [ -f "$ZDOTDIR/.zshrc" ]; then . "$ZDOTDIR/.zshrc"; fi
. "$COURSE_VENV/bin/activate"
