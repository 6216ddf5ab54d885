"""pystatsd: a metrics daemon that receives statsd/DogStatsD lines and JSON datagrams,
merges agent tags, aggregates per flush interval and hands each flush to forwarders."""

__version__ = "2.0.0.dev0"
