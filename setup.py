from setuptools import find_packages, setup

setup(
    name="txraft",
    version="0.1.0",
    description="Raft consensus on Twisted over UDP, with a replicated e-commerce store",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    package_dir={"": "."},
    packages=find_packages(include=["txraft", "txraft.*", "shop", "shop.*"])
    + ["twisted.plugins"],
    package_data={"twisted": ["plugins/txraft_raftnode.py"]},
    install_requires=[
        "twisted>=24.3.0",
        "klein>=23.12.0",
        "treq>=23.11.0",
        "attrs>=23.1.0",
        "zope.interface>=6.0",
        "msgpack>=1.0.5",
        "werkzeug>=2.0",  # imported directly by txraft.http.routing (it also comes with klein)
    ],
    extras_require={
        "test": ["hypothesis>=6.80", "pyyaml>=6.0"],
    },
    entry_points={
        "console_scripts": [
            "shopctl = shop.cli:main",
            "txraft-cluster = txraft.tools.clustercmd:main",
            "txraft-chaos = txraft.tools.chaos.__main__:main",
        ],
    },
)
