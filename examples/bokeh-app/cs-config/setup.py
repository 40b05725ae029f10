from setuptools import setup

setup(name="cs_config", version="0.1.0", packages=["cs_config", "cs_config.tests"])
