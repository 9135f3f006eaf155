# Replaced by `make firmware` with the package version and the commit it was built from.
VERSION = "dev"
