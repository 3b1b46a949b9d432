//! Which addresses a webhook may be delivered to.
//!
//! A subscriber URL is whatever an operator typed, and the platform posts
//! from inside the network: without a rule, a URL naming a metadata
//! service (`169.254.169.254`), an admin port on loopback or a private
//! host would make the platform a proxy into places a subscriber cannot
//! reach. So deliveries are refused to loopback, link-local, private and
//! other non-public ranges ([`refused_range`]), unless
//! `[webhooks] allow_private_networks` or an `allowed_hosts` entry says
//! otherwise.
//!
//! The rule is applied where the connection is made: the webhook client
//! resolves names through [`GuardedResolver`], which hands the connector
//! only permitted addresses, so a name that resolved to a public address
//! at registration and to an internal one later (DNS rebinding) is still
//! refused. URLs with a literal IP never reach a resolver; they are
//! checked before sending ([`AddressPolicy::permits_url_host`]).
//! Registration checks the same rule ahead of time
//! ([`AddressPolicy::check_registration`]) to refuse obvious mistakes with
//! a 422.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use ipnet::IpNet;
use retail_shared::config::WebhookSettings;

/// Why an address is not a public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// `0.0.0.0`, `::` (and the rest of 0.0.0.0/8, "this network").
    Unspecified,
    /// 127.0.0.0/8, `::1`.
    Loopback,
    /// 169.254.0.0/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7 and the deprecated fec0::/10.
    Private,
    /// 100.64.0.0/10, carrier-grade NAT.
    Shared,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4 and 198.18.0.0/15 (benchmarking, often used inside
    /// networks).
    Reserved,
}

/// The non-public range `ip` falls in, if any. IPv6 forms that carry an
/// IPv4 address (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`) are judged by that address.
pub fn refused_range(ip: IpAddr) -> Option<Range> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<Range> {
    let [a, b, ..] = ip.octets();
    if a == 0 {
        Some(Range::Unspecified)
    } else if ip.is_loopback() {
        Some(Range::Loopback)
    } else if ip.is_link_local() {
        Some(Range::LinkLocal)
    } else if ip.is_private() {
        Some(Range::Private)
    } else if a == 100 && (b & 0xc0) == 64 {
        Some(Range::Shared)
    } else if ip.is_multicast() {
        Some(Range::Multicast)
    } else if ip.is_broadcast() {
        Some(Range::Broadcast)
    } else if a >= 240 || (a == 198 && (b & 0xfe) == 18) {
        Some(Range::Reserved)
    } else {
        None
    }
}

fn refused_v6(ip: Ipv6Addr) -> Option<Range> {
    let segments = ip.segments();
    if ip.is_unspecified() {
        Some(Range::Unspecified)
    } else if ip.is_loopback() {
        Some(Range::Loopback)
    } else if let Some(v4) = ip.to_ipv4_mapped() {
        refused_v4(v4)
    } else if segments[..6] == [0; 6] || segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // IPv4-compatible (deprecated) and NAT64's well-known prefix.
        let [.., hi, lo] = segments;
        refused_v4(Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo)))
    } else if ip.is_unicast_link_local() {
        Some(Range::LinkLocal)
    } else if ip.is_unique_local() || (segments[0] & 0xffc0) == 0xfec0 {
        Some(Range::Private)
    } else if ip.is_multicast() {
        Some(Range::Multicast)
    } else {
        None
    }
}

/// The address a URL's host names literally (`[..]` around IPv6). The
/// URL parser has already turned other spellings of an IPv4 address
/// (`2130706433`, `0x7f.1`) into dotted form, so a name never parses.
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// The error a refused name resolves to (found again in the error chain
/// of the failed request, to tell operators "refused address").
#[derive(Debug, thiserror::Error)]
#[error("every address of the subscriber's host is refused")]
pub struct RefusedAddress;

/// `[webhooks] allow_private_networks` and `allowed_hosts`, parsed.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow_private_networks: bool,
    /// Lower-case host names allowed whatever they resolve to.
    hosts: Vec<String>,
    /// Addresses and blocks allowed despite their range.
    networks: Vec<IpNet>,
}

/// Why a registration's URL is refused (the 422's detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// A literal IP in a refused range.
    Address,
    /// A name whose every address is in a refused range.
    Resolves,
}

impl std::fmt::Display for UrlRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Address => {
                "must not name a loopback, link-local, private or other non-public address"
            }
            Self::Resolves => {
                "must not resolve only to loopback, link-local, private or other non-public addresses"
            }
        })
    }
}

impl AddressPolicy {
    /// The policy of `settings`; fails on an `allowed_hosts` entry that is
    /// neither a host name nor an address or CIDR block.
    pub fn from_settings(settings: &WebhookSettings) -> anyhow::Result<Self> {
        let mut policy = Self {
            allow_private_networks: settings.allow_private_networks,
            ..Self::default()
        };
        for entry in &settings.allowed_hosts {
            let entry = entry.trim();
            if let Ok(ip) = entry.parse::<IpAddr>() {
                policy.networks.push(IpNet::from(ip.to_canonical()));
            } else if entry.contains('/') {
                let network = entry.parse::<IpNet>().with_context(|| {
                    format!("webhooks.allowed_hosts: {entry:?} is not a CIDR block")
                })?;
                policy.networks.push(network.trunc());
            } else {
                anyhow::ensure!(
                    !entry.is_empty()
                        && entry
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
                    "webhooks.allowed_hosts: {entry:?} is not a host name, address or CIDR block"
                );
                policy.hosts.push(entry.to_ascii_lowercase());
            }
        }
        Ok(policy)
    }

    /// Whether deliveries may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allow_private_networks
            || refused_range(ip).is_none()
            || self.networks.iter().any(|network| network.contains(&ip))
    }

    /// Whether `host` (a name, not an address) is allowed by name.
    fn names(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// The check of a URL's host that a resolver cannot make: a literal IP
    /// is connected to without resolving. Names pass (the resolver judges
    /// their addresses).
    pub fn permits_url_host(&self, url: &reqwest::Url) -> bool {
        match url.host_str() {
            Some(host) => literal_ip(host).is_none_or(|ip| self.permits(ip)),
            None => false,
        }
    }

    /// The addresses among `addresses` a delivery to `host` may use.
    fn filter(&self, host: &str, addresses: Vec<SocketAddr>) -> Vec<SocketAddr> {
        if self.allow_private_networks || self.names(host) {
            return addresses;
        }
        addresses
            .into_iter()
            .filter(|address| self.permits(address.ip()))
            .collect()
    }

    /// Registration's early answer: a literal IP in a refused range, or a
    /// name that resolves only to refused addresses. A name that does not
    /// resolve (yet) passes: the connect-time check still applies.
    pub async fn check_registration(&self, url: &reqwest::Url) -> Result<(), UrlRefusal> {
        if !self.permits_url_host(url) {
            return Err(UrlRefusal::Address);
        }
        let Some(host) = url.host_str().filter(|host| literal_ip(host).is_none()) else {
            return Ok(());
        };
        if self.allow_private_networks || self.names(host) {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(0);
        match tokio::net::lookup_host((host, port)).await {
            Ok(addresses) => {
                let addresses: Vec<SocketAddr> = addresses.collect();
                if !addresses.is_empty() && self.filter(host, addresses).is_empty() {
                    Err(UrlRefusal::Resolves)
                } else {
                    Ok(())
                }
            }
            Err(error) => {
                tracing::info!(%error, host, "a webhook host does not resolve (yet)");
                Ok(())
            }
        }
    }
}

/// The webhook client's resolver: the system's (through tokio), minus
/// the addresses the policy refuses; a name with none left fails with
/// [`RefusedAddress`].
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    policy: Arc<AddressPolicy>,
}

impl GuardedResolver {
    /// A resolver applying `policy`.
    pub fn new(policy: Arc<AddressPolicy>) -> Self {
        Self { policy }
    }
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port in.
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let permitted = policy.filter(&host, resolved.clone());
            if permitted.is_empty() && !resolved.is_empty() {
                tracing::warn!(
                    host,
                    addresses = ?resolved.iter().map(SocketAddr::ip).collect::<Vec<_>>(),
                    "webhook delivery refused: the host resolves only to refused addresses"
                );
                return Err(Box::new(RefusedAddress) as Box<dyn std::error::Error + Send + Sync>);
            }
            let addresses: reqwest::dns::Addrs = Box::new(permitted.into_iter());
            Ok(addresses)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> Option<Range> {
        refused_range(text.parse().expect("an address"))
    }

    #[test]
    fn ipv4_ranges_are_classified() {
        for (address, expected) in [
            ("0.0.0.0", Some(Range::Unspecified)),
            ("0.1.2.3", Some(Range::Unspecified)),
            ("127.0.0.1", Some(Range::Loopback)),
            ("127.255.255.254", Some(Range::Loopback)),
            ("169.254.169.254", Some(Range::LinkLocal)),
            ("169.254.0.1", Some(Range::LinkLocal)),
            ("10.0.0.1", Some(Range::Private)),
            ("10.255.255.255", Some(Range::Private)),
            ("172.16.0.1", Some(Range::Private)),
            ("172.31.255.255", Some(Range::Private)),
            ("192.168.1.1", Some(Range::Private)),
            ("100.64.0.1", Some(Range::Shared)),
            ("100.127.255.255", Some(Range::Shared)),
            ("224.0.0.1", Some(Range::Multicast)),
            ("239.255.255.250", Some(Range::Multicast)),
            ("255.255.255.255", Some(Range::Broadcast)),
            ("240.0.0.1", Some(Range::Reserved)),
            ("198.18.0.1", Some(Range::Reserved)),
            ("198.19.255.255", Some(Range::Reserved)),
            // Public neighbours of each block.
            ("1.1.1.1", None),
            ("8.8.8.8", None),
            ("9.255.255.255", None),
            ("11.0.0.0", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("192.167.255.255", None),
            ("192.169.0.0", None),
            ("169.253.255.255", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("126.255.255.255", None),
            ("128.0.0.0", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
        ] {
            assert_eq!(range(address), expected, "{address}");
        }
    }

    #[test]
    fn ipv6_ranges_are_classified() {
        for (address, expected) in [
            ("::", Some(Range::Unspecified)),
            ("::1", Some(Range::Loopback)),
            ("fe80::1", Some(Range::LinkLocal)),
            ("febf::1", Some(Range::LinkLocal)),
            ("fc00::1", Some(Range::Private)),
            ("fd12:3456:789a::1", Some(Range::Private)),
            ("fec0::1", Some(Range::Private)),
            ("ff02::1", Some(Range::Multicast)),
            ("2001:4860:4860::8888", None),
            ("2606:4700::1111", None),
            ("fbff::1", None),
        ] {
            assert_eq!(range(address), expected, "{address}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_are_judged_by_the_ipv4_address() {
        for (address, expected) in [
            ("::ffff:127.0.0.1", Some(Range::Loopback)),
            ("::ffff:169.254.169.254", Some(Range::LinkLocal)),
            ("::ffff:10.0.0.1", Some(Range::Private)),
            ("::ffff:172.16.0.1", Some(Range::Private)),
            ("::ffff:192.168.0.1", Some(Range::Private)),
            ("::ffff:100.64.0.1", Some(Range::Shared)),
            ("::ffff:0.0.0.0", Some(Range::Unspecified)),
            ("::ffff:224.0.0.1", Some(Range::Multicast)),
            ("::ffff:255.255.255.255", Some(Range::Broadcast)),
            ("::ffff:7f00:1", Some(Range::Loopback)),
            ("::127.0.0.1", Some(Range::Loopback)),
            ("::10.0.0.1", Some(Range::Private)),
            ("64:ff9b::169.254.169.254", Some(Range::LinkLocal)),
            ("64:ff9b::192.168.1.1", Some(Range::Private)),
            ("::ffff:8.8.8.8", None),
            ("64:ff9b::8.8.8.8", None),
        ] {
            assert_eq!(range(address), expected, "{address}");
        }
    }

    fn policy(allow_private_networks: bool, allowed_hosts: &[&str]) -> AddressPolicy {
        let mut settings = retail_shared::Settings::defaults().webhooks;
        settings.allow_private_networks = allow_private_networks;
        settings.allowed_hosts = allowed_hosts.iter().map(|h| (*h).to_owned()).collect();
        AddressPolicy::from_settings(&settings).expect("a valid policy")
    }

    #[test]
    fn the_allowlist_takes_addresses_blocks_and_names() {
        let strict = policy(false, &[]);
        assert!(!strict.permits("127.0.0.1".parse().expect("ip")));
        assert!(strict.permits("8.8.8.8".parse().expect("ip")));
        let listed = policy(false, &["127.0.0.1", "10.1.0.0/16", "LocalHost"]);
        assert!(listed.permits("127.0.0.1".parse().expect("ip")));
        assert!(listed.permits("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!listed.permits("127.0.0.2".parse().expect("ip")));
        assert!(listed.permits("10.1.200.3".parse().expect("ip")));
        assert!(!listed.permits("10.2.0.1".parse().expect("ip")));
        assert!(!listed.permits("::1".parse().expect("ip")));
        let loopback: SocketAddr = "[::1]:80".parse().expect("socket address");
        assert_eq!(listed.filter("localhost", vec![loopback]), vec![loopback]);
        assert!(listed.filter("elsewhere", vec![loopback]).is_empty());
        assert!(policy(true, &[]).permits("169.254.169.254".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "not a host", ""] {
            let mut settings = retail_shared::Settings::defaults().webhooks;
            settings.allowed_hosts = vec![bad.to_owned()];
            assert!(AddressPolicy::from_settings(&settings).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn registration_refuses_internal_literals_and_names() {
        let strict = policy(false, &[]);
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.1/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://2130706433/",
        ] {
            let url = reqwest::Url::parse(url).expect("url");
            assert_eq!(
                strict.check_registration(&url).await,
                Err(UrlRefusal::Address),
                "{url}"
            );
        }
        let localhost = reqwest::Url::parse("http://localhost:1/hook").expect("url");
        assert_eq!(
            strict.check_registration(&localhost).await,
            Err(UrlRefusal::Resolves)
        );
        let public = reqwest::Url::parse("https://93.184.215.14/hook").expect("url");
        assert_eq!(strict.check_registration(&public).await, Ok(()));
        let dev = policy(false, &["localhost"]);
        assert_eq!(dev.check_registration(&localhost).await, Ok(()));
    }
}
