"""The Hydra edge: composing conf/, checking a command line, the callbacks Hydra calls, the training job."""
