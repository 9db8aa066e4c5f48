//! A DNS server on 127.0.0.1 (UDP) whose answers a test sets and changes:
//! `A` records for the names it knows, an empty answer to other types of
//! query for them, and NXDOMAIN for every other name. limpet asks it when a
//! config says `[dns] server = "<its address>"`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The record types answered.
const TYPE_A: u16 = 1;
/// NOERROR with the QR, RD and RA bits.
const FLAGS_ANSWER: u16 = 0x8180;
const RCODE_NXDOMAIN: u16 = 3;
const RCODE_FORMERR: u16 = 1;

pub struct TestDns {
    pub addr: SocketAddr,
    /// Lower-case name without the trailing dot -> its address.
    records: Arc<Mutex<HashMap<String, Ipv4Addr>>>,
    /// Queries answered, of any kind.
    pub queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl TestDns {
    pub async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind test DNS");
        let addr = socket.local_addr().unwrap();
        let records: Arc<Mutex<HashMap<String, Ipv4Addr>>> = Arc::default();
        let queries = Arc::new(AtomicUsize::new(0));
        let (r, q) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&buf[..n], &r.lock().unwrap());
                let _ = socket.send_to(&reply, from).await;
            }
        });
        TestDns {
            addr,
            records,
            queries,
            task,
        }
    }

    /// `name` resolves to `ip` from now on.
    pub fn set(&self, name: &str, ip: Ipv4Addr) {
        self.records.lock().unwrap().insert(name.to_lowercase(), ip);
    }

    /// `name` no longer resolves (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        self.records.lock().unwrap().remove(&name.to_lowercase());
    }

    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The reply to one query (RFC 1035 section 4): the question echoed, and an
/// A record when the name is known and A was asked for.
fn answer(query: &[u8], records: &HashMap<String, Ipv4Addr>) -> Vec<u8> {
    let Some((name, question_end)) = read_question(query) else {
        let mut reply = query.get(..12).map(<[u8]>::to_vec).unwrap_or(vec![0; 12]);
        reply[2..4].copy_from_slice(&(FLAGS_ANSWER | RCODE_FORMERR).to_be_bytes());
        reply[4..12].fill(0);
        return reply;
    };
    let qtype = u16::from_be_bytes([query[question_end - 4], query[question_end - 3]]);
    let found = records.get(&name);
    let (rcode, ip) = match found {
        None => (RCODE_NXDOMAIN, None),
        Some(ip) if qtype == TYPE_A => (0, Some(*ip)),
        Some(_) => (0, None),
    };
    let mut reply = Vec::with_capacity(question_end + 16);
    reply.extend_from_slice(&query[..2]); // id
    reply.extend_from_slice(&(FLAGS_ANSWER | rcode).to_be_bytes());
    reply.extend_from_slice(&1u16.to_be_bytes()); // questions
    reply.extend_from_slice(&(ip.is_some() as u16).to_be_bytes()); // answers
    reply.extend_from_slice(&[0, 0, 0, 0]); // authority, additional
    reply.extend_from_slice(&query[12..question_end]);
    if let Some(ip) = ip {
        reply.extend_from_slice(&[0xc0, 12]); // the name: a pointer to the question's
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&1u16.to_be_bytes()); // class IN
        reply.extend_from_slice(&1u32.to_be_bytes()); // TTL: 1 s
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    reply
}

/// The question's name (lower case, no trailing dot) and where the question
/// (name, type, class) ends.
fn read_question(query: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *query.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        let label = query.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_lowercase());
        at += len;
    }
    let end = at + 4;
    (query.len() >= end).then(|| (labels.join("."), end))
}
