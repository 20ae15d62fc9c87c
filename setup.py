from setuptools import find_packages, setup

setup(
    name="secmail",
    version="0.1.0",
    description="Secure e-mail gateway: ESMTP relay, encrypted store, HTTPS portal, SMS PINs.",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Framework :: Twisted",
        "Topic :: Communications :: Email :: Mail Transport Agents",
    ],
    python_requires=">=3.11",
    # The top-level web/ folder (templates, style sheet, catalogues) is installed inside the
    # secmail package, as secmail/web/files: nothing goes into site-packages under a generic name.
    packages=find_packages(exclude=["tests", "tests.*", "bench", "bench.*"])
    + ["twisted.plugins", "secmail.web.files"],
    package_dir={"secmail.web.files": "web"},
    package_data={
        "secmail.store": ["schema/*.sql"],
        "secmail.web.files": ["locale/*/LC_MESSAGES/*.po", "templates/**/*.html", "static/*.css"],
    },
    install_requires=[
        "twisted[tls]>=26.4",
        "klein>=24.8",
        "treq>=24.9",
        "pyopenssl>=24.0",
        "service-identity>=24.1",
        "cryptography>=43",
        "pyserial>=3.5",
        "phonenumbers>=8.13",
        "psycopg[binary]>=3.2",
        "nh3>=0.2.17",
        "jinja2>=3.1",
        "babel>=2.14",
        "prometheus-client>=0.20",
        # The admin console: argon2id password hashes, TOTP codes, the terminal QR code.
        "argon2-cffi>=23.1",
        "pyotp>=2.9",
        "segno>=1.6",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "aiosmtpd>=1.4.6",
            "playwright>=1.45",
            # Ships axe-core's axe.min.js (MPL-2.0; the wrapper is MIT): tests/e2e/axe.py.
            "axe-playwright-python>=0.1.8",
            "ruff>=0.6",
            "mypy>=1.11",
            "mypy-zope>=1.0.5",
        ],
    },
    entry_points={"console_scripts": ["secmail = secmail.cli:main"]},
)
