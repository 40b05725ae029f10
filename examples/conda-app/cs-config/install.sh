# Written for Compute Studio's conda images, as many real apps are.
conda install -c conda-forge "paramtools>=0.18" -y
