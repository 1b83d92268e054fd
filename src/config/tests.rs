use super::*;

#[test]
fn every_example_file_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("config dir") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let cfg = Config::from_file(&path).expect("parses");
            cfg.validate().expect("validates");
            seen += 1;
        }
    }
    assert!(seen > 0, "no example config files found");
}

#[test]
fn unknown_field_is_rejected() {
    let err = Config::from_toml("[proxy]\nlisten_port = 1\n").unwrap_err();
    assert!(err.contains("listen_port"), "{err}");
}

#[test]
fn the_old_instance_fields_are_refused_naming_the_group() {
    let text =
        "[source]\nbootstrap = [\"127.0.0.1:9092\"]\n[replication]\ninstances = 2\ninstance = 0\n";
    let cfg = Config::from_toml(text).expect("parses, to say what replaced them");
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("replaced by replication.group"), "{err}");
    let ok = Config::from_toml(
        "[source]\nbootstrap = [\"127.0.0.1:9092\"]\n[replication]\ngroup = \"tier\"\n",
    )
    .expect("parses");
    ok.validate().expect("a group with the defaults is valid");
    assert_eq!(ok.replication.group.as_deref(), Some("tier"));
}

#[test]
fn validate_reports_every_problem() {
    let mut cfg = Config::default();
    cfg.proxy.listen = "nope".into();
    cfg.replication.max_in_flight_per_partition = 0;
    cfg.replication.max_in_flight_bytes = 10;
    cfg.replication.include = vec!["(".into()];
    cfg.replication.follow_interval_ms = u64::MAX;
    cfg.proxy.idle_timeout_ms = u64::MAX;
    cfg.replication.group = Some(" ".into());
    cfg.replication.group_heartbeat_interval_ms = 5_000;
    cfg.replication.group_offsets.include = vec!["[".into()];
    cfg.replication.group_offsets.interval_ms = 0;
    let err = cfg.validate().unwrap_err().to_string();
    for needle in [
        "proxy.listen",
        "source.bootstrap",
        "max_in_flight_per_partition: 0 is outside 1..=65536",
        "replication.max_in_flight_bytes: must be at least 1024",
        "replication.include",
        "replication.follow_interval_ms: 18446744073709551615 is more than a day",
        "proxy.idle_timeout_ms: 18446744073709551615 is more than a day",
        "replication.group: \" \" must be 1 to 249 characters",
        "replication.group_heartbeat_interval_ms: 5000 must be above 0",
        "replication.group_offsets.include: bad pattern \"[\"",
        "replication.group_offsets.interval_ms: 0 is outside 100..=86400000",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
}

#[test]
fn sasl_password_sources_and_errors_never_show_the_secret() {
    let base =
        "[source]\nbootstrap = [\"127.0.0.1:9092\"]\n[target]\nbootstrap = [\"127.0.0.1:9093\"]\n";
    let inline = Config::from_toml(&format!(
        "{base}[target.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"tee\"\npassword = \"hunter2\"\n"
    ))
    .expect("parses");
    inline.validate().expect("validates");
    let sasl = inline.target.sasl.as_ref().expect("sasl");
    assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
    assert_eq!(sasl.password().as_deref(), Ok("hunter2"));
    assert!(!format!("{inline:?}").contains("hunter2"));

    let dir = std::env::temp_dir().join(format!("kafka-tee-sasl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("pw");
    std::fs::write(&file, "from-file\nignored\n").expect("write");
    let from_file = Config::from_toml(&format!(
        "{base}[target.sasl]\nmechanism = \"PLAIN\"\nusername = \"tee\"\npassword_file = {:?}\n",
        file.display().to_string()
    ))
    .expect("parses");
    let sasl = from_file.target.sasl.as_ref().expect("sasl");
    assert_eq!(sasl.password().as_deref(), Ok("from-file"));

    let bad = Config::from_toml(&format!(
        "{base}[target.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"\"\npassword = \"x\"\npassword_env = \"KAFKA_TEE_TEST_UNSET_VAR\"\n[source.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\npassword_env = \"KAFKA_TEE_TEST_UNSET_VAR\"\n"
    ))
    .expect("parses");
    let err = bad.validate().unwrap_err().to_string();
    for needle in [
        "target.sasl.username",
        "target.sasl: give exactly one",
        "source.sasl: password_env: environment variable KAFKA_TEE_TEST_UNSET_VAR",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
    let unknown = Config::from_toml(&format!(
        "{base}[target.sasl]\nmechanism = \"GSSAPI\"\nusername = \"u\"\npassword = \"p\"\n"
    ))
    .unwrap_err();
    assert!(unknown.contains("GSSAPI"), "{unknown}");
    let _ = std::fs::remove_dir_all(&dir);
}
