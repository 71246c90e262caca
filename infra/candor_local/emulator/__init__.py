"""The embedded AWS: moto server, the template deployed on it, and the functions run as Lambda runs them."""
