"""The one exception type users see: a problem with their input, worded as a fix."""


class IMSMError(ValueError):
    """Bad user input: the message names the problem, shows the value and says the fix.

    The CLI prints it as one line and exits non-zero, without a traceback.
    """
