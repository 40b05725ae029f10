import setuptools

setuptools.setup(
    name="cs-config",
    version="1.0.0",
    description="Compute Studio configuration of the conda demo model",
    packages=setuptools.find_packages(),
    include_package_data=True,
    package_data={"cs_config": ["*.json"]},
)
