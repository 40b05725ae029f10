"""The boundary with the model's process: its environment, the child that runs model code, and warm
processes for inputs calls."""
