"""The one kind of error a user fixes: every module raises a subclass, the commands catch this class."""


class UserError(Exception):
    """A problem with what the user gave or asked for (a setting, a corpus, a checkpoint, a run, a
    machine too small): its message is one line naming it and the fix; the command shows that line
    and exits non-zero, without a traceback."""
