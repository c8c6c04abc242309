"""Source loaders: each turns one on-disk format into validated `Record`s."""
