"""The web page: a second door to the service over the same database (README, "Web page")."""
