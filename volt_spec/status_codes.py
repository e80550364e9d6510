"""`volt`'s exit codes, named in one place."""

OK = 0
INVALID = 1          # a spec failed validation (every error printed as file:line:col)
FAILED = 1           # a command could not do what was asked (one line says why)
USAGE = 2            # bad command line
DIFF_CHANGES = 1     # `volt diff`: apply would change something (kubectl's convention)
DIFF_ERROR = 2       # `volt diff`: could not tell
