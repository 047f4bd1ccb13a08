# The FlashSale image: the three release binaries, the C library they link
# and CA certificates, on nothing else (no shell, no package manager). The
# root is assembled on the host by scripts/image, which builds this file
# with buildah (or docker); no base image is pulled.
#   scripts/image        builds it and writes an OCI archive
FROM scratch
COPY image-root/ /
USER 65532:65532
EXPOSE 8080 9090 9091
ENTRYPOINT ["/usr/local/bin/flashsale-operator"]
CMD ["run"]
