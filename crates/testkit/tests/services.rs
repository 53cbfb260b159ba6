//! The kit's own services, checked against the real programs: a private NATS accepts a
//! connection with JetStream on, stalls under SIGSTOP, and comes back on the same port
//! after a restart; after a kill nothing listens there.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::time::Duration;

use roomcast_testkit::Nats;

/// Connects and reads the server's first protocol line (`INFO {...}`).
fn info_line(port: u16) -> std::io::Result<String> {
    let s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line)?;
    Ok(line)
}

fn assert_info(line: &str, port: u16) {
    let json = line
        .strip_prefix("INFO ")
        .unwrap_or_else(|| panic!("an INFO line: {line:?}"));
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("INFO carries JSON");
    assert_eq!(v["port"], port, "{v}");
    assert_eq!(v["jetstream"], true, "JetStream is enabled: {v}");
}

#[test]
fn nats_starts_accepts_stalls_restarts_on_its_port_and_dies() {
    let mut nats = Nats::start();
    let port = nats.port;
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    assert_info(&info_line(port).unwrap(), port);
    assert!(nats.store_dir().is_dir(), "JetStream store in the temp dir");

    // SIGSTOP: the kernel still accepts the connection, the server says nothing.
    nats.signal("STOP");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(s.read(&mut buf).is_err(), "a stopped server sends nothing");
    nats.signal("CONT");
    let mut line = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    BufReader::new(s).read_line(&mut line).unwrap();
    assert_info(&line, port);

    nats.restart();
    assert_eq!(nats.port, port, "same port after a restart");
    assert_info(&info_line(port).unwrap(), port);

    nats.kill();
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens after kill"
    );
}
