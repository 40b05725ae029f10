"""The platform's flows (publish, simulate) and inputs tasks, with the tasks they are made of."""
