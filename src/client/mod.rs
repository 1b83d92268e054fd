//! A small Kafka client on the kafka-protocol crate, used for DC2 (produce, topics,
//! producer id) and for reading back from DC1 (fetch, configs).
