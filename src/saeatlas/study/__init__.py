"""Studies: one TOML file describing the whole job, run as cached stages (`saeatlas run`)."""
