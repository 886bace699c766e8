"""Sky models: synthetic extended sources, AGN fields, blank fields, and their FITS format."""
