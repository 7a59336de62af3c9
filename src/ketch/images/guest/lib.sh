# ketch tiny image: shell functions of the NoCloud datasource.  Sourced by
# /usr/lib/ketch/nocloud-local and /usr/lib/ketch/cloud-final.
#
# The instance's configuration comes from the seed ISO (volume label cidata)
# as ketch-guest.sh: a list of ketch_* calls whose arguments are single-quoted
# sh words (see ketch.host.seed in ketch's sources for the format).  The file
# is sourced once per phase, each time in a subshell, with KETCH_PHASE set:
#   meta      print instance-id and local-hostname
#   boot      every boot: hostname, ssh host keys, users, sudo rules, keys
#   instance  once per instance-id: write_files, runcmd (run by cloud-final)
# Values are only ever used quoted; anything that would break a passwd,
# group or sudoers line is refused here as it is refused by ketch.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH

CLOUD_DIR=/var/lib/cloud
KETCH_RUN=/run/ketch
NL='
'

# log MESSAGE: to the console (the serial log) and /var/log/cloud-init.log.
log() {
	echo "ketch-init: $*"
	printf '%s ketch-init: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S')" "$*" >>/var/log/cloud-init.log 2>/dev/null
}

# A user or group name as useradd accepts it.
valid_name() {
	case "$1" in
	'' | -* | *[!A-Za-z0-9_.-]*) return 1 ;;
	esac
	[ "${#1}" -le 32 ]
}

# An instance-id usable as a directory name.
valid_iid() {
	case "$1" in
	'' | . | .. | *[!A-Za-z0-9_.:-]*) return 1 ;;
	esac
	return 0
}

# A field of /etc/passwd: no colon, no newline.
valid_field() {
	case "$1" in
	*:* | *"$NL"*) return 1 ;;
	esac
	return 0
}

valid_hostname() {
	case "$1" in
	'' | -* | .* | *[!A-Za-z0-9.-]*) return 1 ;;
	esac
	[ "${#1}" -le 64 ]
}

# entry_get FILE NAME: find NAME's entry in /etc/passwd-style FILE; its fields are then
# in _e1 .. _e7 (passwd: _e3 uid, _e4 gid, _e6 home; group: _e3 gid, _e4 members).
# False if there is none.  Plain shell, no process: under TCG each one costs 10-20 ms,
# and this runs on every boot (a warm clone's too).
entry_get() {
	while IFS=: read -r _e1 _e2 _e3 _e4 _e5 _e6 _e7 || [ -n "$_e1" ]; do # (a last line without \n too)
		[ "$_e1" = "$2" ] && return 0
	done <"$1"
	return 1
}

# entry_exists FILE NAME: does /etc/passwd-style FILE have an entry NAME?
entry_exists() {
	entry_get "$1" "$2"
}

# next_id FILE: the lowest unused id >= 1000 in FILE (passwd or group).
next_id() {
	awk -F: '{ used[$3] = 1 } END { for (i = 1000; i in used; i++); print i }' "$1"
}

id_in_use() {
	awk -F: -v i="$2" '$3 == i { found = 1 } END { exit !found }' "$1"
}

# replace FILE: install stdin as FILE, atomically, keeping FILE's mode.
replace() {
	_tmp="$1.ketch-new"
	cat >"$_tmp" || { rm -f "$_tmp"; return 1; }
	chmod "$(stat -c %a "$1" 2>/dev/null || echo 644)" "$_tmp"
	mv -f "$_tmp" "$1"
}

ensure_group() {
	valid_name "$1" || { log "invalid group name: $1"; return 1; }
	entry_exists /etc/group "$1" && return 0
	_gid=$2
	if [ -z "$_gid" ] || id_in_use /etc/group "$_gid"; then
		_gid=$(next_id /etc/group)
	fi
	printf '%s:x:%s:\n' "$1" "$_gid" >>/etc/group
	printf '%s:!::\n' "$1" >>/etc/gshadow 2>/dev/null
	return 0
}

# add_member GROUP USER
add_member() {
	ensure_group "$1" || return 1
	entry_get /etc/group "$1" || return 1
	case ",$_e4," in
	*",$2,"*) return 0 ;; # a member already (every boot after the first): nothing to write
	esac
	awk -F: -v OFS=: -v g="$1" -v u="$2" '
		$1 == g {
			n = split($4, m, ",")
			for (i = 1; i <= n; i++) if (m[i] == u) { print; next }
			$4 = ($4 == "" ? u : $4 "," u)
		}
		{ print }' /etc/group | replace /etc/group
}

set_hostname() {
	valid_hostname "$1" || { log "invalid hostname: $1"; return 1; }
	short=${1%%.*}
	_cur=
	[ -r /etc/hostname ] && read -r _cur </etc/hostname
	[ "$_cur" = "$short" ] || printf '%s\n' "$short" >/etc/hostname
	hostname "$short"
	{
		echo "127.0.0.1 localhost"
		if [ "$short" != "$1" ]; then
			echo "127.0.1.1 $1 $short"
		else
			echo "127.0.1.1 $short"
		fi
		echo "::1 localhost ip6-localhost ip6-loopback"
	} >/etc/hosts.ketch-new && mv -f /etc/hosts.ketch-new /etc/hosts
}

# ---- the calls a ketch-guest.sh makes -------------------------------------

ketch_format() {
	[ "$1" = 1 ] && return 0
	log "unsupported ketch-guest.sh format $1; ignoring the rest"
	exit 1
}

ketch_meta() {
	[ "$KETCH_PHASE" = meta ] || return 0
	case "$1" in
	instance-id) KETCH_IID=$2 ;;
	local-hostname) KETCH_LOCAL_HOSTNAME=$2 ;;
	esac
	return 0
}

ketch_hostname() {
	[ "$KETCH_PHASE" = boot ] || return 0
	set_hostname "$1"
}

# ketch_host_key TYPE BASE64: an OpenSSH private host key, for dropbear.
ketch_host_key() {
	[ "$KETCH_PHASE" = boot ] || return 0
	case "$1" in
	rsa | ecdsa | ed25519) ;;
	*) log "unsupported ssh host key type: $1"; return 0 ;;
	esac
	mkdir -p /etc/dropbear "$KETCH_RUN"
	chmod 700 /etc/dropbear
	_key=/etc/dropbear/dropbear_$1_host_key
	_tmp=$(mktemp "$KETCH_RUN/hostkey.XXXXXX") || return 1
	if printf '%s' "$2" | base64 -d >"$_tmp" &&
		dropbearconvert openssh dropbear "$_tmp" "$_key.ketch-new" >/dev/null 2>&1; then
		chmod 600 "$_key.ketch-new"
		mv -f "$_key.ketch-new" "$_key"
		echo "$1" >>"$KETCH_RUN/host-key-types"
	else
		rm -f "$_key.ketch-new"
		log "could not convert the $1 ssh host key"
	fi
	rm -f "$_tmp"
	return 0
}

# ketch_user NAME UID GECOS HOME SHELL GROUPS: create the user unless it exists.
ketch_user() {
	[ "$KETCH_PHASE" = boot ] || return 0
	_name=$1 _uid=$2 _gecos=$3 _home=${4:-/home/$1} _shell=${5:-/bin/sh} _groups=$6
	valid_name "$_name" || { log "invalid user name: $_name"; return 0; }
	if ! valid_field "$_gecos" || ! valid_field "$_home" || ! valid_field "$_shell"; then
		log "invalid passwd field for user $_name"
		return 0
	fi
	case "$_uid" in
	'' | *[!0-9]*) _uid= ;;
	esac
	case "$_home" in
	/*) ;;
	*) log "home of $_name is not absolute: $_home"; return 0 ;;
	esac
	if [ ! -x "$_shell" ]; then
		log "shell $_shell of $_name is not in this image; using /bin/sh"
		_shell=/bin/sh
	fi
	if ! entry_exists /etc/passwd "$_name"; then
		if [ -z "$_uid" ] || id_in_use /etc/passwd "$_uid"; then
			_uid=$(next_id /etc/passwd)
		fi
		ensure_group "$_name" "$_uid" || return 0
		entry_get /etc/group "$_name" || return 0
		_gid=$_e3
		printf '%s:x:%s:%s:%s:%s:%s\n' "$_name" "$_uid" "$_gid" "$_gecos" "$_home" "$_shell" >>/etc/passwd
		# "*": no password login, but not locked (dropbear refuses "!").
		printf '%s:*:%s:0:99999:7:::\n' "$_name" "$(($(date +%s) / 86400))" >>/etc/shadow
		log "created user $_name ($_uid)"
	fi
	entry_get /etc/passwd "$_name" || return 0
	_uid=$_e3 _gid=$_e4 _home=$_e6
	if [ ! -d "$_home" ]; then
		mkdir -p "$_home"
		chown "$_uid:$_gid" "$_home"
		chmod 755 "$_home"
	fi
	_old_ifs=$IFS
	IFS=,
	for _g in $_groups; do
		IFS=$_old_ifs
		[ -n "$_g" ] && add_member "$_g" "$_name"
	done
	IFS=$_old_ifs
	return 0
}

# ketch_user_sudo NAME RULE: a line of /etc/sudoers.d/90-cloud-init-users.
ketch_user_sudo() {
	[ "$KETCH_PHASE" = boot ] || return 0
	valid_name "$1" || return 0
	case "$2" in
	*"$NL"*) log "invalid sudo rule for $1"; return 0 ;;
	esac
	mkdir -p "$KETCH_RUN"
	printf '%s %s\n' "$1" "$2" >>"$KETCH_RUN/sudoers"
}

# ketch_user_key NAME KEY: make sure KEY is in NAME's authorized_keys.
ketch_user_key() {
	[ "$KETCH_PHASE" = boot ] || return 0
	valid_name "$1" || return 0
	case "$2" in
	'' | *"$NL"*) log "invalid ssh key for $1"; return 0 ;;
	esac
	entry_get /etc/passwd "$1" || { log "no user $1 for an ssh key"; return 0; }
	_home=$_e6 _uid=$_e3 _gid=$_e4
	_ak=$_home/.ssh/authorized_keys
	if [ ! -d "$_home/.ssh" ]; then
		mkdir -p "$_home/.ssh"
		chown "$_uid:$_gid" "$_home/.ssh"
		chmod 700 "$_home/.ssh"
	fi
	if ! grep -qxF -- "$2" "$_ak" 2>/dev/null; then
		printf '%s\n' "$2" >>"$_ak"
	fi
	chown "$_uid:$_gid" "$_ak"
	chmod 600 "$_ak"
}

# ketch_write_file PATH PERMS OWNER append|replace BASE64
ketch_write_file() {
	[ "$KETCH_PHASE" = instance ] || return 0
	case "$1" in
	/*) ;;
	*) log "write_files: path is not absolute: $1"; return 0 ;;
	esac
	case "$2" in
	'' | *[!0-7]*) log "write_files: bad permissions for $1"; return 0 ;;
	esac
	mkdir -p -- "$(dirname -- "$1")"
	if [ "$4" = append ]; then
		printf '%s' "$5" | base64 -d >>"$1" || log "write_files: could not append to $1"
	else
		printf '%s' "$5" | base64 -d >"$1.ketch-new" && mv -f -- "$1.ketch-new" "$1" ||
			log "write_files: could not write $1"
	fi
	chown -- "$3" "$1" || log "write_files: could not chown $1 to $3"
	chmod -- "$2" "$1"
	return 0
}

# ketch_runcmd BASE64: the runcmd script, run once by cloud-final.
ketch_runcmd() {
	[ "$KETCH_PHASE" = instance ] || return 0
	mkdir -p "$KETCH_INSTANCE/scripts"
	printf '%s' "$1" | base64 -d >"$KETCH_INSTANCE/scripts/runcmd"
	chmod 700 "$KETCH_INSTANCE/scripts/runcmd"
}
