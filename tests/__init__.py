"""adaprefix's tests. A package so that a module here may share its name with one in a subfolder (test_config)."""
