"""Exit status of the fishtune CLI (design.md §1), shared by the CLI and the launcher."""

OK = 0  # the study finished (completed, early-stopped and diverged trials are results)
FAILED = 1  # a trial failed, or the study could not go on
USER_ERROR = 2  # a mistake in the command or spec: nothing started or written
INTERRUPTED = 130  # SIGINT/SIGTERM: state saved, `fishtune resume NAME` continues
