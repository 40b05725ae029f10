# The model's dependencies, as a Compute Studio app declares them.
pip install "paramtools==0.20.0"
