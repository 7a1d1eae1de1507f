"""ads: Active Data Search on a CPU laptop."""

__version__ = "0.1.0"
