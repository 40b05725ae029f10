import setuptools

setuptools.setup(
    name="cs-config",
    version="1.0.0",
    description="Compute Studio configuration of a demo model whose system package keeps data"
    " under /var/lib, and whose tests write into their working directory",
    packages=setuptools.find_packages(),
)
