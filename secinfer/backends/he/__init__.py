"""The `he` backend: the model owner serves, the data owner holds the CKKS key (`protocols.he`).

Importing the package registers its kernels."""

from secinfer.backends.he import kernels  # noqa: F401 - registers the he kernels
