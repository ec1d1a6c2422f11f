//! The dataplane's error type: every variant names the operation and the object it was
//! applied to, e.g. `replace route 10.11.4.0/22 via 192.0.2.12 table 254: ...`.

use std::io;

/// `EOPNOTSUPP`: what the kernel answers `RTM_NEWLINK` for a link kind whose module is
/// neither loaded nor loadable (`ip` prints "Unknown device type").
pub const EOPNOTSUPP: i32 = 95;
/// `ENODEV`: no link by that name or index.
pub const ENODEV: i32 = 19;
/// `ENOENT`: no such object.
pub const ENOENT: i32 = 2;
/// `ESRCH`: what the kernel answers `RTM_DELROUTE` for a route that does not exist.
pub const ESRCH: i32 = 3;
/// `EEXIST`: object already exists (link add, address add, route add without replace).
pub const EEXIST: i32 = 17;
/// `ENETUNREACH`: a gateway not in any connected subnet, without `onlink`.
pub const ENETUNREACH: i32 = 101;
/// `ENETDOWN`: `onlink` next hop on a device that is down.
pub const ENETDOWN: i32 = 100;
/// `EINVAL`: invalid argument, e.g. a `src` that is not a local address.
pub const EINVAL: i32 = 22;

/// Errors of [`Dataplane`](super::Dataplane) operations.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The kernel cannot create this kind of link: its module is not available.
    /// Callers report it as "tunnel mode ipip unavailable on this kernel".
    #[error("{op}: link type {kind} unavailable on this kernel (module not available)")]
    Unsupported {
        /// The operation, with its object.
        op: String,
        /// The link kind (`ipip`, `gre`, `ip6tnl`, `vxlan`, `bridge`).
        kind: String,
    },
    /// The object does not exist (`ENODEV`, `ENOENT`, `ESRCH`).
    #[error("{op}: not found")]
    NotFound {
        /// The operation, with its object.
        op: String,
    },
    /// The object already exists (`EEXIST`).
    #[error("{op}: already exists")]
    AlreadyExists {
        /// The operation, with its object.
        op: String,
    },
    /// Any other error the kernel returned.
    #[error("{op}: {source}")]
    Kernel {
        /// The operation, with its object.
        op: String,
        /// The kernel's errno, as an I/O error ("Network is unreachable (os error 101)").
        #[source]
        source: io::Error,
    },
    /// The request cannot be expressed (e.g. an ipip tunnel with IPv6 endpoints); nothing
    /// was sent to the kernel.
    #[error("{op}: {reason}")]
    Invalid {
        /// The operation, with its object.
        op: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The netlink connection itself failed (socket, namespace, closed connection).
    #[error("{op}: {source}")]
    Connection {
        /// What was being done.
        op: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The kernel answered something the dataplane cannot interpret.
    #[error("{op}: unexpected netlink reply: {detail}")]
    Protocol {
        /// The operation, with its object.
        op: String,
        /// What was unexpected.
        detail: String,
    },
}

impl DataplaneError {
    /// Classifies a kernel errno (positive) for operation `op`; `kind` is the link kind
    /// being created, if any, so `EOPNOTSUPP` becomes [`DataplaneError::Unsupported`].
    pub fn from_errno(op: impl Into<String>, errno: i32, kind: Option<&str>) -> Self {
        let op = op.into();
        match (errno, kind) {
            (EOPNOTSUPP, Some(kind)) => DataplaneError::Unsupported {
                op,
                kind: kind.to_string(),
            },
            (ENODEV | ENOENT | ESRCH, _) => DataplaneError::NotFound { op },
            (EEXIST, _) => DataplaneError::AlreadyExists { op },
            _ => DataplaneError::Kernel {
                op,
                source: io::Error::from_raw_os_error(errno),
            },
        }
    }

    /// The kernel errno behind this error, if it came from the kernel.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DataplaneError::Unsupported { .. } => Some(EOPNOTSUPP),
            DataplaneError::AlreadyExists { .. } => Some(EEXIST),
            DataplaneError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    /// Whether the object was missing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, DataplaneError::NotFound { .. })
    }

    /// Whether the kernel lacks the link type.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, DataplaneError::Unsupported { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification_and_messages() {
        let e = DataplaneError::from_errno("add link tun1 type ipip", EOPNOTSUPP, Some("ipip"));
        assert!(e.is_unsupported());
        assert_eq!(
            e.to_string(),
            "add link tun1 type ipip: link type ipip unavailable on this kernel (module not available)"
        );
        let e = DataplaneError::from_errno("delete link nope", ENODEV, None);
        assert!(e.is_not_found());
        assert_eq!(e.to_string(), "delete link nope: not found");
        let e = DataplaneError::from_errno(
            "replace route 10.11.4.0/22 via 192.0.2.12 table 254",
            ENETUNREACH,
            None,
        );
        assert_eq!(e.errno(), Some(ENETUNREACH));
        assert!(e.to_string().starts_with(
            "replace route 10.11.4.0/22 via 192.0.2.12 table 254: Network is unreachable"
        ));
        // EOPNOTSUPP outside a link creation is a plain kernel error.
        let e = DataplaneError::from_errno("set link x up", EOPNOTSUPP, None);
        assert!(matches!(e, DataplaneError::Kernel { .. }));
    }
}
