import setuptools

setuptools.setup(
    name="cs-config",
    version="1.0.0",
    description="Compute Studio configuration of the attacking demo model",
    packages=setuptools.find_packages(),
    package_data={"cs_config": ["*.json"]},
)
