"""One module per technique the course teaches. Topics import only the core layer."""
