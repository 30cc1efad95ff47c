# zsh start-up files of the lab's terminals (tools/jupyter/terminal.sh): the user's own, then the course's environment.
if [ -f "$COURSE_ZDOTDIR/.zshenv" ]; then . "$COURSE_ZDOTDIR/.zshenv"; fi
