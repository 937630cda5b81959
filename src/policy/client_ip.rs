//! Who the client is: the peer address, or, when the peer is one of `server.trusted_proxies`,
//! the address that proxy reported in `X-Forwarded-For`. Used by `ip_restriction`, the
//! `${client_ip}` variable of `transform`, the access log and (later) rate limiting, so that
//! all of them agree.
//!
//! `X-Forwarded-For` is read from the right: each trusted proxy appends the address it saw, so
//! the first address from the right that is not a trusted proxy is the client. Anything left
//! of it was written by the client itself and is not believed.

use std::net::IpAddr;

use pingora::http::RequestHeader;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("\"{text}\" is not an address or CIDR block (10.0.0.0/8)");
        let (address, prefix) = match text.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.parse::<u8>().map_err(|_| invalid())?,
            None => max,
        };
        if prefix > max {
            return Err(format!("\"{text}\": the prefix length is at most {max}"));
        }
        // An IPv4-mapped block (`::ffff:10.0.0.0/104`) is the IPv4 block it maps, since
        // addresses are compared in their IPv4 form.
        let (address, prefix) = match address {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
                if prefix < 96 {
                    return Err(format!(
                        "\"{text}\": an IPv4-mapped block needs a prefix of at least 96"
                    ));
                }
                (canonical(address), prefix - 96)
            }
            _ => (address, prefix),
        };
        Ok(Cidr {
            network: mask(address, prefix),
            prefix,
        })
    }

    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        address.is_ipv4() == self.network.is_ipv4() && mask(address, self.prefix) == self.network
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "{}/{}", self.network, self.prefix)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, as dual-stack sockets report IPv4 peers) are
/// compared as the IPv4 address they carry.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn mask(address: IpAddr, prefix: u8) -> IpAddr {
    match canonical(address) {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = if prefix == 0 {
                0
            } else {
                bits & (u32::MAX << (32 - u32::from(prefix)))
            };
            IpAddr::V4(kept.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = if prefix == 0 {
                0
            } else {
                bits & (u128::MAX << (128 - u32::from(prefix)))
            };
            IpAddr::V6(kept.into())
        }
    }
}

/// Parses a list of CIDRs; problems go to `report(index, message)`.
pub fn parse_list(items: &[String], report: &mut dyn FnMut(usize, String)) -> Vec<Cidr> {
    items
        .iter()
        .enumerate()
        .filter_map(|(index, text)| match Cidr::parse(text) {
            Ok(cidr) => Some(cidr),
            Err(message) => {
                report(index, message);
                None
            }
        })
        .collect()
}

/// [`resolve`] for a session: its peer and its request.
pub fn of_session(session: &pingora::proxy::Session, trusted: &[Cidr]) -> Option<IpAddr> {
    resolve(
        session
            .client_addr()
            .and_then(|address| address.as_inet())
            .map(|address| address.ip()),
        session.req_header(),
        trusted,
    )
}

/// The client's address as the gateway believes it (see the module comment).
pub fn resolve(peer: Option<IpAddr>, request: &RequestHeader, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer.map(canonical)?;
    let is_trusted = |address: IpAddr| trusted.iter().any(|cidr| cidr.contains(address));
    if trusted.is_empty() || !is_trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    let mut lines: Vec<&str> = request
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .collect();
    lines.reverse();
    for line in lines {
        for item in line.rsplit(',') {
            let Ok(address) = item.trim().parse::<IpAddr>() else {
                // A garbled entry: nothing left of it can be trusted.
                return Some(client);
            };
            client = canonical(address);
            if !is_trusted(client) {
                return Some(client);
            }
        }
    }
    Some(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::test_request;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let block = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(block.contains(ip("10.1.255.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(
            Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("2001:db8:1::1"))
        );
        assert!(
            !Cidr::parse("2001:db8::/32")
                .unwrap()
                .contains(ip("10.0.0.1"))
        );
        assert!(
            Cidr::parse("192.168.1.7")
                .unwrap()
                .contains(ip("192.168.1.7"))
        );
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        let mapped = Cidr::parse("::ffff:10.0.0.0/104").unwrap();
        assert!(mapped.contains(ip("10.9.9.9")));
        assert!(!mapped.contains(ip("11.0.0.1")));
        assert!(
            Cidr::parse("::ffff:10.0.0.1")
                .unwrap()
                .contains(ip("10.0.0.1"))
        );
        assert!(Cidr::parse("::ffff:10.0.0.0/95").is_err());
        assert!(Cidr::parse("ten").is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = [
            Cidr::parse("127.0.0.0/8").unwrap(),
            Cidr::parse("10.0.0.0/8").unwrap(),
        ];
        let request = test_request(
            "GET",
            "/",
            &[
                ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
                ("x-forwarded-for", "10.0.0.5"),
            ],
        );
        // Through two trusted hops: the first untrusted address from the right.
        assert_eq!(
            resolve(Some(ip("127.0.0.1")), &request, &trusted),
            Some(ip("203.0.113.9"))
        );
        // An untrusted peer's header is ignored.
        assert_eq!(
            resolve(Some(ip("198.51.100.1")), &request, &trusted),
            Some(ip("198.51.100.1"))
        );
        assert_eq!(
            resolve(Some(ip("127.0.0.1")), &request, &[]),
            Some(ip("127.0.0.1"))
        );
        let garbled = test_request("GET", "/", &[("x-forwarded-for", "1.2.3.4, junk")]);
        assert_eq!(
            resolve(Some(ip("127.0.0.1")), &garbled, &trusted),
            Some(ip("127.0.0.1"))
        );
    }
}
