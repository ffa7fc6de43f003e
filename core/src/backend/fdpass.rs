//! Passing file descriptors between processes over a Unix socket (SCM_RIGHTS).
//!
//! This is how the host backend exports a physical allocation: the memfd travels to another
//! process, which maps the same pages (zero copy). CUDA POSIX-fd handles travel the same way.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The kernel's limit on descriptors in one SCM_RIGHTS message (`SCM_MAX_FD`).
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Send `fds` together with `payload` (at least one byte: Linux drops ancillary data sent with an
/// empty payload on stream sockets). On a stream socket the whole payload is sent; the descriptors
/// ride with its first byte.
pub fn send_fds(socket: impl AsFd, fds: &[BorrowedFd<'_>], payload: &[u8]) -> io::Result<()> {
    if payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "send_fds needs at least one payload byte to carry the descriptors",
        ));
    }
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "send_fds: {} descriptors exceed the kernel limit of {MAX_FDS_PER_MESSAGE} per message",
                fds.len()
            ),
        ));
    }
    let socket = socket.as_fd();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "send_fds: control buffer too small for the descriptors",
        ));
    }
    let flags = SendFlags::NOSIGNAL;
    let mut sent = rustix::net::sendmsg(socket, &[IoSlice::new(payload)], &mut control, flags)?;
    // A stream socket may take part of the payload; the descriptors went with the first part.
    while sent < payload.len() {
        let rest = payload.get(sent..).unwrap_or_default();
        match rustix::net::send(socket, rest, flags)? {
            0 => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            n => sent += n,
        }
    }
    Ok(())
}

/// Receive one message into `payload` with up to `max_fds` descriptors, which arrive
/// close-on-exec. Returns the number of payload bytes and the descriptors. A closed peer is
/// `UnexpectedEof`; descriptors dropped because `max_fds` was too small are an error (the ones
/// that did arrive are closed).
pub fn recv_fds(
    socket: impl AsFd,
    payload: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    if payload.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "recv_fds needs room for at least one payload byte",
        ));
    }
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(max_fds))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(payload)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    // The control buffer rounds up, so more than `max_fds` may fit: enforce the caller's bound.
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::other(format!(
            "recv_fds: descriptors were dropped (room for {max_fds}, more were sent)"
        )));
    }
    if msg.bytes == 0 && fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "recv_fds: the peer closed the socket",
        ));
    }
    Ok((msg.bytes, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Read, Seek, Write};
    use std::os::unix::net::UnixStream;

    #[test]
    fn passes_a_file_descriptor_with_its_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"through the socket").unwrap();
        send_fds(&a, &[file.as_fd()], b"hello").unwrap();
        let mut buf = [0u8; 16];
        let (n, fds) = recv_fds(&b, &mut buf, 4).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(fds.len(), 1);
        let mut got = File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut s = String::new();
        got.read_to_string(&mut s).unwrap();
        assert_eq!(s, "through the socket");
    }

    #[test]
    fn several_fds_and_none() {
        let (a, b) = UnixStream::pair().unwrap();
        let f1 = tempfile::tempfile().unwrap();
        let f2 = tempfile::tempfile().unwrap();
        send_fds(&a, &[f1.as_fd(), f2.as_fd()], b"2").unwrap();
        send_fds(&a, &[], b"0").unwrap();
        let mut buf = [0u8; 1];
        let (_, fds) = recv_fds(&b, &mut buf, 2).unwrap();
        assert_eq!(fds.len(), 2);
        let (n, fds) = recv_fds(&b, &mut buf, 2).unwrap();
        assert_eq!((n, fds.len(), buf[0]), (1, 0, b'0'));
    }

    #[test]
    fn rejects_empty_payload_and_reports_eof_and_truncation() {
        let (a, b) = UnixStream::pair().unwrap();
        let f = tempfile::tempfile().unwrap();
        let e = send_fds(&a, &[f.as_fd()], b"").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut buf = [0u8; 1];
        for n in [2, 3] {
            send_fds(&a, &vec![f.as_fd(); n], b"x").unwrap();
            let e = recv_fds(&b, &mut buf, 1).unwrap_err();
            assert!(e.to_string().contains("dropped"), "{e}");
        }
        drop(a);
        let e = recv_fds(&b, &mut buf, 1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
