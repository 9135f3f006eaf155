"""Distances on the Earth, for alerts to the people within a radius of a place.

The haversine formula on a sphere of the mean Earth radius: within 0.5 % of the
ellipsoid, which is far finer than a phone's shared location needs.
"""

from __future__ import annotations

import math

#: IUGG mean Earth radius, metres.
EARTH_RADIUS_M = 6_371_008.8


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Return the great-circle distance in metres between two points in degrees."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlambda = math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlambda / 2) ** 2
    # min(): rounding can push `a` a hair above 1 for antipodal points.
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(min(1.0, a)))


def within(lat: float, lon: float, centre_lat: float, centre_lon: float, radius_m: float) -> bool:
    """Return whether (lat, lon) lies within *radius_m* metres of the centre."""
    return distance_m(lat, lon, centre_lat, centre_lon) <= radius_m
