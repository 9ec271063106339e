"""``python -m deeplabv2_ext``: print the versions, the build and the devices (for bug reports)."""
from deeplabv2_ext.env import report

print(report())
