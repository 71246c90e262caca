"""The setup step: models fetched, converted and verified, and the deployable size of each function."""
