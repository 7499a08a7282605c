"""The peers Voxline is measured against: the same job (synthesize, upload, publish) written the
way their authors' documentation and the seed articles show, configured from the same environment
variables as ``voxline run``."""
