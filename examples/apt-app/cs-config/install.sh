# A system package, installed the way Compute Studio apps did: C/S ran install.sh as root in the
# model's image, whose package lists were already fetched (no apt-get update here).
apt-get install -y --no-install-recommends tree
