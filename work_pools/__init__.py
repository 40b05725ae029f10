"""Work pools from the base job templates kept as JSON beside this package."""
