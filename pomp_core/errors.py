"""The errors the library raises for input a user can fix; the tools print them as one line
(``pomp_core.cli.run_tool``)."""


class UserError(Exception):
    """An input the user can fix; the message names the problem and the fix."""


class WeightsUnavailable(UserError):
    """Pre-trained weights named by a tag could not be downloaded (offline machine)."""
