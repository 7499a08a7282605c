// Grants or revokes one ACL on the secured test broker with Kafka's own Admin client (the jars
// the broker runs from), as the super user: the security tests revoke an ACL during a run.
// Run as a single source file (no compile step):
//   java -cp 'LIBS/*' tests/integration/AclChange.java ADMIN_PROPERTIES add|remove PRINCIPAL TOPIC OPERATION

import java.io.FileInputStream;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class AclChange {
    public static void main(String[] args) throws Exception {
        if (args.length != 5 || !(args[1].equals("add") || args[1].equals("remove"))) {
            throw new IllegalArgumentException("usage: PROPERTIES add|remove PRINCIPAL TOPIC OPERATION");
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        AclBinding binding = new AclBinding(
                new ResourcePattern(ResourceType.TOPIC, args[3], PatternType.LITERAL),
                new AccessControlEntry(
                        args[2], "*", AclOperation.valueOf(args[4]), AclPermissionType.ALLOW));
        try (Admin admin = Admin.create(props)) {
            if (args[1].equals("add")) {
                admin.createAcls(List.of(binding)).all().get(60, TimeUnit.SECONDS);
            } else {
                var removed = admin.deleteAcls(List.of(binding.toFilter())).all().get(60, TimeUnit.SECONDS);
                if (removed.isEmpty()) throw new IllegalStateException("no such ACL: " + binding);
            }
        }
        System.out.println(args[1] + " " + binding);
    }
}
