"""Driver, report and plots of a reproduction (moved out of the jaxlm library)."""
