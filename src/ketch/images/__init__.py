"""Images: the built-in tiny image, simplestreams remotes, and the verified cache."""
