"""The `patron` command line and the retraining pipeline that compose the stages."""
