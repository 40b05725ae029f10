import setuptools

setuptools.setup(
    name="cs-config",
    version="1.0.0",
    description="Compute Studio configuration of a demo model that needs system packages",
    packages=setuptools.find_packages(),
)
