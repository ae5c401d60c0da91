"""The admin live page: plain HTML, CSS and JavaScript served by :mod:`geviso.mock.admin`."""
