"""The warm-start server: ``b24`` hands a call to a forked worker of a long-lived server instead
of importing the whole stack each time (README, "The warm server"). Kept import-free: ``launch``
must start in a few milliseconds."""
