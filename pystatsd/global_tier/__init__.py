"""The global aggregation tier: local daemons send each series' mergeable interval state
(``partials``) to Kafka, and members running ``mode: global`` merge it per series and interval
across hosts and produce the global statistics, exactly once, in Kafka transactions.
docs/scaling.md tells the whole story."""
