//! Who was on the other end of a request: the connection's peer as the kernel saw it at accept
//! ([`Endpoint`]), and the client behind it when the peer is a reverse proxy Vigie was told to
//! trust ([`ClientConfig::trusted_proxies`]) or a FastCGI front server (`REMOTE_ADDR`). Pure:
//! a request head and the peer in, a [`Client`] out, so replay names the same clients.
//!
//! Forwarded headers (`Forwarded`, `X-Forwarded-For`, `X-Real-IP`) are written by whoever sends
//! the request: from anyone but a trusted proxy they are a claim, never evidence. They are read
//! only when the peer is trusted, from the right (the hop the trusted proxy itself added) to the
//! left, stopping at the first address that is not a trusted proxy: that address is the client.
//! Entries left of it were written by the client itself and are ignored.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::http::RequestHead;

/// Pseudo header carrying a FastCGI request's `REMOTE_ADDR` (see [`crate::fastcgi`]): no HTTP
/// header can have this name (a header name is a token, without `:`).
pub const REMOTE_ADDR_HEADER: &str = ":remote-addr";
/// Pseudo header carrying a FastCGI request's `REMOTE_PORT`.
pub const REMOTE_PORT_HEADER: &str = ":remote-port";

/// The peer of an accepted connection, as the kernel's socket had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "snake_case")]
pub enum Endpoint {
    Ipv4 {
        ip: Ipv4Addr,
        port: u16,
    },
    /// Including IPv4-mapped addresses (`::ffff:a.b.c.d`) of dual-stack sockets.
    Ipv6 {
        ip: Ipv6Addr,
        port: u16,
    },
    /// A unix socket: local, with no address that names the client.
    Unix,
}

impl Endpoint {
    /// The IP address, IPv4-mapped IPv6 addresses as the IPv4 address they carry (what the
    /// client's own logs and the firewall's show).
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ipv4 { ip, .. } => Some(IpAddr::V4(*ip)),
            Self::Ipv6 { ip, .. } => Some(ip.to_ipv4_mapped().map_or(IpAddr::V6(*ip), IpAddr::V4)),
            Self::Unix => None,
        }
    }

    #[must_use]
    pub fn port(&self) -> Option<u16> {
        match self {
            Self::Ipv4 { port, .. } | Self::Ipv6 { port, .. } => Some(*port),
            Self::Unix => None,
        }
    }
}

/// Which proxies' forwarded headers are believed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Addresses or networks of the reverse proxies in front of the portal (`"127.0.0.1"`,
    /// `"10.0.0.0/8"`, `"::1"`), and `"unix"` for a proxy connected over a unix socket. Empty:
    /// forwarded headers are never believed, the client is the connection's peer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
}

/// A trusted proxy entry that is not an address, a network or `unix`.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IP address, a network (ADDR/LEN) or \"unix\"")]
pub struct BadProxy(pub String);

/// [`ClientConfig`], parsed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<ipnet::IpNet>,
    unix: bool,
}

impl TrustedProxies {
    pub fn parse(cfg: &ClientConfig) -> Result<Self, BadProxy> {
        let mut out = Self::default();
        for entry in &cfg.trusted_proxies {
            let e = entry.trim();
            if e == "unix" {
                out.unix = true;
            } else if let Ok(net) = e.parse::<ipnet::IpNet>() {
                out.nets.push(net.trunc());
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                out.nets.push(ipnet::IpNet::from(ip));
            } else {
                return Err(BadProxy(entry.clone()));
            }
        }
        Ok(out)
    }

    fn trusts_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    fn trusts(&self, peer: &Endpoint) -> bool {
        match peer.ip() {
            Some(ip) => self.trusts_ip(ip),
            None => self.unix,
        }
    }
}

/// How the client address of a request was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSource {
    /// The connection's peer.
    Peer,
    /// `Forwarded: for=` from a trusted proxy.
    Forwarded,
    /// `X-Forwarded-For` from a trusted proxy.
    XForwardedFor,
    /// `X-Real-IP` from a trusted proxy.
    XRealIp,
    /// `REMOTE_ADDR` of a FastCGI request (set by the front server).
    Fastcgi,
}

/// The client of a request, for alerts: where to look, whom to block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Client {
    /// `ipv4`, `ipv6` or `unix`.
    pub family: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub source: ClientSource,
    /// The trusted proxies the request came through, nearest the client first (when a
    /// forwarded header was believed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<IpAddr>,
    /// The request carried forwarded headers that were not believed: its peer is no trusted
    /// proxy (a client claiming another address), or the header could not be read.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub forwarded_ignored: bool,
}

/// IPv4-mapped IPv6 addresses as IPv4, so that `127.0.0.1` in the configuration matches a
/// dual-stack socket's `::ffff:127.0.0.1`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// The client of a request that arrived from `peer` with `head`.
#[must_use]
pub fn client_of(
    peer: Option<&Endpoint>,
    head: &RequestHead,
    trusted: &TrustedProxies,
) -> Option<Client> {
    // FastCGI: the connection's peer is the front server; the client is its REMOTE_ADDR.
    let (ip, port, source) = if let Some(addr) = head.header(REMOTE_ADDR_HEADER) {
        let ip = std::str::from_utf8(addr)
            .ok()?
            .trim()
            .parse::<IpAddr>()
            .ok()?;
        let port = head
            .header(REMOTE_PORT_HEADER)
            .and_then(|p| std::str::from_utf8(p).ok()?.trim().parse().ok());
        (canonical(ip), port, ClientSource::Fastcgi)
    } else {
        let peer = peer?;
        let claims = has_forwarded(head);
        if !trusted.trusts(peer) {
            return Some(match peer.ip() {
                Some(ip) => Client {
                    family: family_of(ip),
                    ip: Some(ip),
                    port: peer.port(),
                    source: ClientSource::Peer,
                    proxies: Vec::new(),
                    forwarded_ignored: claims,
                },
                None => Client {
                    family: "unix",
                    ip: None,
                    port: None,
                    source: ClientSource::Peer,
                    proxies: Vec::new(),
                    forwarded_ignored: claims,
                },
            });
        }
        match peer.ip() {
            Some(ip) => (ip, peer.port(), ClientSource::Peer),
            None if !claims => {
                return Some(Client {
                    family: "unix",
                    ip: None,
                    port: None,
                    source: ClientSource::Peer,
                    proxies: Vec::new(),
                    forwarded_ignored: false,
                });
            }
            // A trusted proxy on a unix socket: its forwarded header is the only address.
            None => (IpAddr::V4(Ipv4Addr::UNSPECIFIED), None, ClientSource::Peer),
        }
    };
    let unix_proxy = source == ClientSource::Peer && ip.is_unspecified() && port.is_none();
    if source == ClientSource::Fastcgi && !trusted.trusts_ip(ip) {
        return Some(Client {
            family: family_of(ip),
            ip: Some(ip),
            port,
            source,
            proxies: Vec::new(),
            forwarded_ignored: false,
        });
    }
    // The peer (or the FastCGI front server's client) is a trusted proxy: walk its hops.
    let Some((hops, via)) = forwarded_hops(head) else {
        return Some(Client {
            family: if unix_proxy { "unix" } else { family_of(ip) },
            ip: (!unix_proxy).then_some(ip),
            port,
            source,
            proxies: Vec::new(),
            forwarded_ignored: has_forwarded(head),
        });
    };
    let mut proxies = Vec::new();
    if !unix_proxy {
        proxies.push(ip);
    }
    let mut client = None;
    for hop in hops.iter().rev() {
        let hop = canonical(*hop);
        if trusted.trusts_ip(hop) {
            proxies.push(hop);
            client = Some(hop);
            continue;
        }
        client = Some(hop);
        break;
    }
    let client = client?;
    // The client itself is not one of the proxies it went through.
    if proxies.last() == Some(&client) {
        proxies.pop();
    }
    proxies.reverse();
    Some(Client {
        family: family_of(client),
        ip: Some(client),
        port: None,
        source: via,
        proxies,
        forwarded_ignored: false,
    })
}

fn has_forwarded(head: &RequestHead) -> bool {
    ["forwarded", "x-forwarded-for", "x-real-ip"]
        .iter()
        .any(|h| head.header(h).is_some())
}

/// The hops a forwarded header lists, client first, and which header: `Forwarded`, else
/// `X-Forwarded-For`, else `X-Real-IP`. `None` when there is none, or when an entry is not an
/// address (`unknown`, an obfuscated name, garbage): a chain with a hole names no one.
fn forwarded_hops(head: &RequestHead) -> Option<(Vec<IpAddr>, ClientSource)> {
    let mut hops = Vec::new();
    if head.header("forwarded").is_some() {
        for value in head.header_values("forwarded") {
            let value = std::str::from_utf8(value).ok()?;
            for element in value.split(',') {
                let for_ = element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
                })?;
                hops.push(forwarded_node(for_)?);
            }
        }
        return Some((hops, ClientSource::Forwarded));
    }
    if head.header("x-forwarded-for").is_some() {
        for value in head.header_values("x-forwarded-for") {
            let value = std::str::from_utf8(value).ok()?;
            for entry in value.split(',') {
                hops.push(plain_node(entry.trim())?);
            }
        }
        return Some((hops, ClientSource::XForwardedFor));
    }
    let value = std::str::from_utf8(head.header("x-real-ip")?).ok()?;
    Some((vec![plain_node(value.trim())?], ClientSource::XRealIp))
}

/// An RFC 7239 node: `192.0.2.43`, `"192.0.2.43:47011"`, `"[2001:db8::1]:4711"`.
fn forwarded_node(v: &str) -> Option<IpAddr> {
    let v = v.trim_matches('"');
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    let host = match v.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => v,
    };
    host.parse().ok()
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`, `[::1]:5`).
fn plain_node(v: &str) -> Option<IpAddr> {
    if let Ok(ip) = v.parse() {
        return Some(ip);
    }
    forwarded_node(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/".into(),
            minor_version: 1,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                .collect(),
            head_len: 0,
            content_length: None,
            chunked: false,
            keep_alive: true,
        }
    }

    fn trusted(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&ClientConfig {
            trusted_proxies: list.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn v4(ip: &str, port: u16) -> Endpoint {
        Endpoint::Ipv4 {
            ip: ip.parse().unwrap(),
            port,
        }
    }

    #[test]
    fn peer_is_the_client_without_proxies() {
        let c = client_of(Some(&v4("192.0.2.7", 5555)), &head(&[]), &trusted(&[])).unwrap();
        assert_eq!(c.ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.port, Some(5555));
        assert_eq!(c.source, ClientSource::Peer);
        assert!(!c.forwarded_ignored);
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"family":"ipv4","ip":"192.0.2.7","port":5555,"source":"peer"}"#
        );
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_ignored_and_flagged() {
        let h = head(&[("x-forwarded-for", "10.9.9.9"), ("x-real-ip", "10.9.9.9")]);
        let c = client_of(Some(&v4("192.0.2.7", 1)), &h, &trusted(&["127.0.0.1"])).unwrap();
        assert_eq!(c.ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.source, ClientSource::Peer);
        assert!(c.forwarded_ignored);
    }

    #[test]
    fn rightmost_untrusted_hop_is_the_client() {
        // The client wrote "6.6.6.6" itself; the trusted proxies appended the rest.
        let h = head(&[("x-forwarded-for", "6.6.6.6, 192.0.2.7, 10.0.0.2")]);
        let t = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        let c = client_of(Some(&v4("127.0.0.1", 4000)), &h, &t).unwrap();
        assert_eq!(c.ip, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(c.port, None);
        assert_eq!(c.source, ClientSource::XForwardedFor);
        assert_eq!(
            c.proxies,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn forwarded_rfc7239_with_ipv6_and_ports() {
        let h = head(&[(
            "forwarded",
            r#"for="[2001:db8::17]:4711";proto=https, for=127.0.0.1"#,
        )]);
        let peer = Endpoint::Ipv6 {
            ip: "::ffff:127.0.0.1".parse().unwrap(),
            port: 9,
        };
        let c = client_of(Some(&peer), &h, &trusted(&["127.0.0.1"])).unwrap();
        assert_eq!(c.ip, Some("2001:db8::17".parse().unwrap()));
        assert_eq!(c.family, "ipv6");
        assert_eq!(c.source, ClientSource::Forwarded);
        // Forwarded wins over the legacy headers when both are there.
        let h = head(&[("x-real-ip", "10.1.1.1"), ("forwarded", "for=192.0.2.1")]);
        let c = client_of(Some(&v4("127.0.0.1", 1)), &h, &trusted(&["127.0.0.1"])).unwrap();
        assert_eq!(c.ip, Some("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn a_hole_in_the_chain_names_the_proxy_not_a_guess() {
        for bad in ["unknown", "_hidden", "not an ip", ""] {
            let h = head(&[("forwarded", &format!("for={bad}"))]);
            let c = client_of(Some(&v4("127.0.0.1", 1)), &h, &trusted(&["127.0.0.1"])).unwrap();
            assert_eq!(c.ip, Some("127.0.0.1".parse().unwrap()), "{bad}");
            assert_eq!(c.source, ClientSource::Peer);
            assert!(c.forwarded_ignored);
        }
    }

    #[test]
    fn v4_mapped_peers_are_shown_as_ipv4() {
        let peer = Endpoint::Ipv6 {
            ip: "::ffff:192.0.2.9".parse().unwrap(),
            port: 80,
        };
        let c = client_of(Some(&peer), &head(&[]), &trusted(&[])).unwrap();
        assert_eq!(c.family, "ipv4");
        assert_eq!(c.ip, Some("192.0.2.9".parse().unwrap()));
        let loopback6 = Endpoint::Ipv6 {
            ip: Ipv6Addr::LOCALHOST,
            port: 80,
        };
        let c = client_of(Some(&loopback6), &head(&[]), &trusted(&[])).unwrap();
        assert_eq!(c.family, "ipv6");
        assert_eq!(c.ip, Some("::1".parse().unwrap()));
    }

    #[test]
    fn unix_peers_are_named_as_such() {
        let c = client_of(Some(&Endpoint::Unix), &head(&[]), &trusted(&[])).unwrap();
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"family":"unix","source":"peer"}"#
        );
        let h = head(&[("x-real-ip", "192.0.2.5")]);
        let c = client_of(Some(&Endpoint::Unix), &h, &trusted(&["unix"])).unwrap();
        assert_eq!(c.ip, Some("192.0.2.5".parse().unwrap()));
        assert_eq!(c.source, ClientSource::XRealIp);
        assert!(c.proxies.is_empty());
        let c = client_of(Some(&Endpoint::Unix), &h, &trusted(&[])).unwrap();
        assert_eq!(c.family, "unix");
        assert!(c.forwarded_ignored);
    }

    #[test]
    fn fastcgi_remote_addr() {
        let h = head(&[(REMOTE_ADDR_HEADER, "::1"), (REMOTE_PORT_HEADER, "41000")]);
        let c = client_of(Some(&Endpoint::Unix), &h, &trusted(&[])).unwrap();
        assert_eq!(c.ip, Some("::1".parse().unwrap()));
        assert_eq!(c.port, Some(41000));
        assert_eq!(c.source, ClientSource::Fastcgi);
        // Behind a proxy in front of the web server: its header, only when it is trusted.
        let h = head(&[
            (REMOTE_ADDR_HEADER, "127.0.0.1"),
            ("x-forwarded-for", "192.0.2.4"),
        ]);
        let c = client_of(None, &h, &trusted(&["127.0.0.1"])).unwrap();
        assert_eq!(c.ip, Some("192.0.2.4".parse().unwrap()));
        let c = client_of(None, &h, &trusted(&[])).unwrap();
        assert_eq!(c.ip, Some("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_proxy_entries_are_refused() {
        for bad in ["localhost", "10.0.0.0/33", "1.2.3"] {
            let cfg = ClientConfig {
                trusted_proxies: vec![bad.into()],
            };
            assert!(TrustedProxies::parse(&cfg).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoint_trace_shape() {
        let e = Endpoint::Ipv6 {
            ip: Ipv6Addr::LOCALHOST,
            port: 8080,
        };
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(json, r#"{"family":"ipv6","ip":"::1","port":8080}"#);
        assert_eq!(serde_json::from_str::<Endpoint>(&json).unwrap(), e);
        assert_eq!(
            serde_json::from_str::<Endpoint>(r#"{"family":"unix"}"#).unwrap(),
            Endpoint::Unix
        );
    }
}
